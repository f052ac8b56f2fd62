// PlateBridge watch page: plays /streams/<camera_id>/index.m3u8 with hls.js
// (or natively where the browser plays HLS itself, e.g. Safari).
// The token is read from this page's own URL and sent only to the gateway.
//
// Low-Latency HLS: hls.js runs with lowLatencyMode, so a pod that offers parts
// (EXT-X-PART-INF, EXT-X-SERVER-CONTROL) is played PART-HOLD-BACK behind the live
// edge with blocking playlist reloads; a pod serving classic HLS (older pods,
// low_latency: false, mpegts) is played 3 target durations behind, as before, by
// the same player without any switch. A small indicator shows how far the picture
// is behind the camera (Date.now() - the playing frame's EXT-X-PROGRAM-DATE-TIME,
// i.e. since the pod received it); "Jump to live" appears when playback drifts.
(function () {
  "use strict";
  var statusEl = document.getElementById("status");
  var behindEl = document.getElementById("behind");
  var liveBtn = document.getElementById("golive");
  var video = document.getElementById("video");
  var parts = location.pathname.split("/");
  var cameraId = decodeURIComponent(parts[parts.length - 1] || "");
  var query = new URLSearchParams(location.search);
  var token = query.get("token") || "";
  var lowLatency = query.get("ll") !== "0"; // ?ll=0: play as a classic HLS player would
  var DRIFT_SECONDS = 1.5; // show "Jump to live" this far past the player's own target
  var CATCH_UP_FROM = 0.1; // play faster when this far (s) behind the target latency...
  var MIN_AHEAD = 0.25;    // ...and at least this much (s) is buffered ahead
  window.pbStatus = { state: "starting", errors: [], lowLatency: null, behind: null, latency: null, target: null };
  function setStatus(s, detail) {
    window.pbStatus.state = s;
    statusEl.textContent = s + (detail ? ": " + detail : "");
  }
  if (!cameraId || !token) { setStatus("error", "missing camera or token"); return; }
  var src = "../streams/" + encodeURIComponent(cameraId) + "/index.m3u8?token=" + encodeURIComponent(token);
  video.addEventListener("playing", function () { setStatus("playing"); });
  video.addEventListener("waiting", function () { setStatus("buffering"); });

  function showBehind(behind, drifting) {
    window.pbStatus.behind = behind;
    behindEl.textContent = behind === null ? "" : behind.toFixed(1) + " s behind live";
    liveBtn.hidden = !drifting;
  }

  if (window.Hls && window.Hls.isSupported()) {
    var hls = new window.Hls({
      lowLatencyMode: lowLatency,      // parts + blocking reloads when the pod offers them
      // no liveSync* keys: set by hand they override PART-HOLD-BACK; the defaults play classic
      // pods 3 target durations behind, as before
      // hls.js speeds up towards its target latency only with more than 1 s buffered ahead,
      // which an LL-HLS player 0.6 s behind the edge never has: catchUp() below does it
      maxLiveSyncPlaybackRate: 1,
      backBufferLength: 10,
      manifestLoadingMaxRetry: 6, levelLoadingMaxRetry: 6
    });
    window.pbHls = hls;
    hls.on(window.Hls.Events.LEVEL_UPDATED, function (_e, data) {
      var d = data.details;
      window.pbStatus.lowLatency = lowLatency && !!(d && d.partTarget); // playing LL-HLS parts
    });
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
    liveBtn.addEventListener("click", function () {
      var pos = hls.liveSyncPosition;
      if (pos !== null && pos !== undefined) video.currentTime = pos;
      video.play().catch(function () {});
    });
    // Catch up with the target latency (PART-HOLD-BACK, or 3 target durations for classic
    // pods) by playing a little faster while enough is buffered ahead; never below 1x.
    function catchUp(target) {
      var rate = 1;
      var ahead = 0;
      var b = video.buffered;
      for (var i = 0; i < b.length; i++) {
        if (b.start(i) <= video.currentTime + 0.05 && b.end(i) > video.currentTime) ahead = b.end(i) - video.currentTime;
      }
      var over = hls.latency - target;
      if (over > CATCH_UP_FROM && ahead > MIN_AHEAD) rate = over > 1 ? 1.25 : 1.1;
      if (video.playbackRate !== rate) video.playbackRate = rate;
    }
    setInterval(function () {
      var date = hls.playingDate;
      var behind = date ? (Date.now() - date.getTime()) / 1000 : null;
      var target = hls.targetLatency;
      window.pbStatus.latency = hls.latency;
      window.pbStatus.target = target;
      if (target !== null && !video.paused && !video.seeking) catchUp(target);
      var drifting = !video.paused && target !== null && hls.latency > target + DRIFT_SECONDS;
      showBehind(behind !== null && behind >= 0 ? behind : null, drifting);
    }, 250);
  } else if (video.canPlayType("application/vnd.apple.mpegurl")) {
    // Safari plays LL-HLS natively over HTTP/2 (the Caddy front); its own live edge
    video.src = src;
    video.play().catch(function () {});
    liveBtn.addEventListener("click", function () {
      if (video.seekable.length) video.currentTime = video.seekable.end(video.seekable.length - 1);
    });
    setInterval(function () {
      var date = video.getStartDate && video.getStartDate();
      var ms = date && !isNaN(date.getTime()) ? date.getTime() + video.currentTime * 1000 : NaN;
      var behind = isNaN(ms) ? null : (Date.now() - ms) / 1000;
      var edge = video.seekable.length ? video.seekable.end(video.seekable.length - 1) : null;
      showBehind(behind !== null && behind >= 0 ? behind : null, edge !== null && edge - video.currentTime > 3 + DRIFT_SECONDS);
    }, 250);
  } else {
    setStatus("error", "this browser cannot play HLS");
  }
})();
