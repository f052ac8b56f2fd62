// PlateBridge watch page: plays /streams/<camera_id>/index.m3u8 with hls.js
// (or natively where the browser plays HLS itself, e.g. Safari).
// The token is read from this page's own URL and sent only to the gateway.
(function () {
  "use strict";
  var statusEl = document.getElementById("status");
  var video = document.getElementById("video");
  var parts = location.pathname.split("/");
  var cameraId = decodeURIComponent(parts[parts.length - 1] || "");
  var token = new URLSearchParams(location.search).get("token") || "";
  window.pbStatus = { state: "starting", errors: [] };
  function setStatus(s, detail) {
    window.pbStatus.state = s;
    statusEl.textContent = s + (detail ? ": " + detail : "");
  }
  if (!cameraId || !token) { setStatus("error", "missing camera or token"); return; }
  var src = "../streams/" + encodeURIComponent(cameraId) + "/index.m3u8?token=" + encodeURIComponent(token);
  video.addEventListener("playing", function () { setStatus("playing"); });
  video.addEventListener("waiting", function () { setStatus("buffering"); });
  if (window.Hls && window.Hls.isSupported()) {
    var hls = new window.Hls({ liveSyncDurationCount: 3, manifestLoadingMaxRetry: 6, levelLoadingMaxRetry: 6 });
    hls.on(window.Hls.Events.ERROR, function (_e, data) {
      window.pbStatus.errors.push(data.type + ":" + data.details);
      if (!data.fatal) return;
      var code = data.response && data.response.code;
      if (code === 401 || code === 403) { setStatus("error", "access expired — reopen from the portal"); hls.destroy(); return; }
      if (data.type === window.Hls.ErrorTypes.MEDIA_ERROR) { hls.recoverMediaError(); return; }
      setStatus("reconnecting");
      setTimeout(function () { hls.startLoad(); }, 2000);
    });
    hls.loadSource(src);
    hls.attachMedia(video);
    hls.on(window.Hls.Events.MANIFEST_PARSED, function () { video.play().catch(function () {}); });
  } else if (video.canPlayType("application/vnd.apple.mpegurl")) {
    video.src = src;
    video.play().catch(function () {});
  } else {
    setStatus("error", "this browser cannot play HLS");
  }
})();
