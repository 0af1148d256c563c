"""``media.image`` (Pillow) and ``media.probe``/``media.transcode`` (Debian's ffmpeg) on
images and videos made here (Pillow, ffmpeg's lavfi test source), with their limits."""

from __future__ import annotations

import io
import shutil
import subprocess

import pytest
from PIL import Image

from shiftflow.kernel.artifacts import LocalArtifactStore
from shiftflow.kernel.errors import LimitExceeded, ToolError
from shiftflow.kernel.tools.base import ToolContext, ToolLimits
from shiftflow.kernel.tools.media_av import TOOLS as AV_TOOLS
from shiftflow.kernel.tools.media_image import TOOL as IMAGE

PROBE, TRANSCODE = AV_TOOLS

if not shutil.which("ffmpeg") or not shutil.which("ffprobe"):  # `make test` installs them (scripts/ensure-tools.sh)
    pytest.fail("ffmpeg/ffprobe are missing: run `make tools` (scripts/ensure-tools.sh)", pytrace=False)


@pytest.fixture
def store(tmp_path) -> LocalArtifactStore:
    return LocalArtifactStore(tmp_path / "artifacts")


def _ctx(store, **limits) -> ToolContext:
    return ToolContext(artifacts=store, limits=ToolLimits(**limits))


def _png(store, size=(400, 300), mode="RGBA", colour=(0, 128, 255, 255)) -> dict:
    out = io.BytesIO()
    Image.new(mode, size, colour).save(out, "PNG")
    return store.put(out.getvalue(), "picture.png", "image/png").to_dict()


def _open(store, ref) -> Image.Image:
    return Image.open(io.BytesIO(store.get(ref["location"])))


def test_thumbnail_resize_and_convert(store):
    source = _png(store)
    thumb = IMAGE.call({"input": source, "operation": "thumbnail", "width": 100, "height": 100}, _ctx(store))
    assert (thumb["width"], thumb["height"]) == (100, 75) and thumb["format"] == "png"
    assert _open(store, thumb["artifact"]).size == (100, 75)
    wide = IMAGE.call({"input": source["location"], "operation": "resize", "width": 800, "format": "webp"},
                      _ctx(store))
    image = _open(store, wide["artifact"])
    assert image.format == "WEBP" and image.size == (800, 600) and wide["artifact"]["mime"] == "image/webp"
    jpeg = IMAGE.call({"input": source, "operation": "convert", "format": "jpeg", "quality": 70}, _ctx(store))
    image = _open(store, jpeg["artifact"])
    assert image.format == "JPEG" and image.mode == "RGB" and jpeg["artifact"]["name"] == "picture.jpg"
    assert max(abs(a - b) for a, b in zip(image.getpixel((10, 10)), (0, 128, 255), strict=True)) < 8
    # A thumbnail never enlarges.
    small = IMAGE.call({"input": source, "operation": "thumbnail", "width": 1000}, _ctx(store))
    assert (small["width"], small["height"]) == (400, 300)


def test_pixel_limits_are_checked_before_decoding(store):
    huge = _png(store, size=(6000, 5000), mode="1", colour=0)  # 30 Mpx, a few KB compressed
    with pytest.raises(LimitExceeded, match=r"with.input is 6000x5000 = 30000000 pixels, over the limit of 1000000 "
                                            r"\(SHIFTFLOW_MEDIA_MAX_PIXELS\)"):
        IMAGE.call({"input": huge, "operation": "thumbnail", "width": 10}, _ctx(store, max_pixels=1_000_000))
    with pytest.raises(LimitExceeded, match="the output is 5000x3750"):
        IMAGE.call({"input": _png(store), "operation": "resize", "width": 5000}, _ctx(store, max_pixels=1_000_000))


def test_bad_image_input_is_permanent(store):
    text = store.put(b"not an image at all", "notes.txt").to_dict()
    with pytest.raises(ToolError, match="with.input: not an image format Pillow can read"):
        IMAGE.call({"input": text, "operation": "convert", "format": "png"}, _ctx(store))
    with pytest.raises(ToolError, match="with: resize needs width, height or both"):
        IMAGE.call({"input": _png(store), "operation": "resize"}, _ctx(store))


@pytest.fixture(scope="module")
def video_bytes(tmp_path_factory) -> bytes:
    """Two seconds of 160x120 test pattern at 10 fps with a 440 Hz tone, H.264/AAC in MP4."""
    path = tmp_path_factory.mktemp("media") / "clip.mp4"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=160x120:rate=10:duration=2",
         "-f", "lavfi", "-i", "sine=frequency=440:duration=2", "-shortest", "-c:v", "libx264", "-preset",
         "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac", str(path)],
        check=True, timeout=60,
    )
    return path.read_bytes()


def test_probe_describes_a_video(store, video_bytes):
    clip = store.put(video_bytes, "clip.mp4", "video/mp4")
    out = PROBE.call({"input": clip.to_dict()}, _ctx(store))
    assert "mp4" in out["format"] and 1.9 < out["duration"] < 2.2 and out["size"] == len(video_bytes)
    video, audio = sorted(out["streams"], key=lambda s: s["type"], reverse=True)
    assert video == {"index": video["index"], "type": "video", "codec": "h264", "width": 160, "height": 120,
                     "fps": 10.0}
    assert audio["type"] == "audio" and audio["codec"] == "aac" and audio["channels"] == 1


def test_transcode_scales_trims_and_extracts_audio(store, video_bytes):
    clip = store.put(video_bytes, "clip.mp4", "video/mp4").to_dict()
    webm = TRANSCODE.call({"input": clip, "format": "webm", "max_width": 80, "duration": 1, "name": "small"},
                          _ctx(store))
    assert webm["artifact"]["mime"] == "video/webm" and webm["artifact"]["name"] == "small.webm"
    video = next(s for s in webm["streams"] if s["type"] == "video")
    assert (video["width"], video["height"]) == (80, 60) and 0.9 < webm["duration"] < 1.2
    mp3 = TRANSCODE.call({"input": clip, "format": "mp3"}, _ctx(store))
    assert [s["type"] for s in mp3["streams"]] == ["audio"] and mp3["artifact"]["mime"] == "audio/mpeg"
    probe = PROBE.call({"input": mp3["artifact"]}, _ctx(store))
    assert probe["format"] == "mp3"


def test_duration_and_size_limits_name_the_limit(store, video_bytes):
    clip = store.put(video_bytes, "clip.mp4", "video/mp4").to_dict()
    with pytest.raises(LimitExceeded, match=r"over the limit of 1.5 s \(SHIFTFLOW_MEDIA_MAX_DURATION_SECONDS\)"):
        TRANSCODE.call({"input": clip, "format": "gif"}, _ctx(store, max_duration=1.5))
    # Trimming below the limit is accepted.
    gif = TRANSCODE.call({"input": clip, "format": "gif", "duration": 1, "fps": 5}, _ctx(store, max_duration=1.5))
    assert gif["artifact"]["mime"] == "image/gif"
    with pytest.raises(LimitExceeded, match="video of 160x120 pixels is over the limit of 1000"):
        TRANSCODE.call({"input": clip, "format": "mp4"}, _ctx(store, max_pixels=1000))
    # Two seconds of 16-bit PCM is ~176 kB: ffmpeg stops at the cap, and the cut file is refused.
    with pytest.raises(LimitExceeded, match=r"wav output reached the artifact limit of 20000 bytes"):
        TRANSCODE.call({"input": clip, "format": "wav"}, _ctx(store, max_artifact_bytes=20_000))
    assert [p.name for p in store.root.rglob("*.wav")] == []


def test_playlists_cannot_make_ffmpeg_read_other_files_or_urls(store):
    playlist = b"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\nfile:///etc/passwd\n#EXTINF:1,\nhttp://127.0.0.1:9/x.ts\n#EXT-X-ENDLIST\n"
    evil = store.put(playlist, "evil.m3u8").to_dict()
    with pytest.raises(ToolError, match="not a media file ffprobe can read"):
        PROBE.call({"input": evil}, _ctx(store))
    with pytest.raises(ToolError, match="not a media file ffprobe can read"):
        TRANSCODE.call({"input": evil, "format": "mp3"}, _ctx(store))


def test_the_exif_orientation_of_a_photo_is_honoured(store):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    out = io.BytesIO()
    Image.new("RGB", (400, 300), (255, 0, 0)).save(out, "JPEG", exif=exif)
    photo = store.put(out.getvalue(), "photo.jpg", "image/jpeg").to_dict()
    # Displayed, the photo is 300x400: a 150x1000 box halves it (the stored 400x300 would give 150x112).
    thumb = IMAGE.call({"input": photo, "operation": "thumbnail", "width": 150, "height": 1000}, _ctx(store))
    assert (thumb["width"], thumb["height"]) == (150, 200) and _open(store, thumb["artifact"]).size == (150, 200)
