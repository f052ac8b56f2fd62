"""The watch page in Debian's headless chromium: live video actually plays."""

from __future__ import annotations

import time

import pytest

from tests.e2e.conftest import assert_video_plays, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.browser]


def test_watch_page_plays_live_video(stack, browser):
    browser.get(stack.watch_url(stack.user_token()))
    assert_video_plays(browser)


def test_watch_page_without_valid_token_explains(stack, browser):
    browser.get(f"{stack.gateway_url}/watch/{stack.camera_id}?token=nope")
    assert "not valid" in browser.page_source


def test_uploaded_clip_plays_in_chromium(tmp_path, browser):
    """Issue 4 acceptance: a confirmed clip's download URL plays in chromium."""
    import sys
    from pathlib import Path

    import httpx

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "deploy" / "dev"))
    from frigate_sim import Publisher

    from tests.e2e.conftest import make_stack

    s = make_stack(tmp_path, pod_overrides={"pre_roll": 2, "recording_duration": 4, "max_decision_wait": 1})
    try:
        s.start_mosquitto()
        s.start_portal([{"plate": "TEST123"}])
        s.start_camera()
        s.start_pod(timeout=60)
        time.sleep(3)
        pub = Publisher("127.0.0.1", s.mqtt_port)
        pub.passage("TEST123")
        pub.close()

        def recs():
            return httpx.get(f"{s.portal_url}/api/pod/recordings", params={"camera_id": s.camera_id},
                             headers={"Authorization": "Bearer user"}, timeout=5).json()["recordings"]

        [rec] = wait_until(recs, 40, interval=0.5, what="a confirmed clip")
        browser.get(rec["video_url"])  # chromium's own media document
        play = "const v=document.querySelector('video'); v.muted=true; v.play(); return true"
        wait_until(lambda: browser.execute_script(play), 10, what="video element")
        wait_until(lambda: browser.execute_script("return document.querySelector('video').currentTime") > 1.0,
                   20, interval=0.3, what="clip playback")
        dims = browser.execute_script("const v=document.querySelector('video');return [v.videoWidth,v.duration]")
        assert dims[0] == 640 and abs(dims[1] - 6) <= 1.5
    finally:
        s.stop()
