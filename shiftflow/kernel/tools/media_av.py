"""``media.probe`` and ``media.transcode``: audio and video artifacts through ffprobe/ffmpeg.

Untrusted media is dangerous to ffmpeg in one well-known way: a playlist or concat file
can name other files or URLs, which ffmpeg then reads (local files, internal services).
Every run therefore reads its input with ``-protocol_whitelist file`` and a
``-format_whitelist`` of plain container formats (no HLS, concat, lavfi, image2 patterns).
Each run has a timeout (``SHIFTFLOW_MEDIA_TIMEOUT_SECONDS``; on expiry the ffmpeg process
is killed by its id), the input's duration and picture size are checked before any
transcoding, and the output is capped at the artifact limit (``-fs``).
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from shiftflow.kernel.artifacts import location_of
from shiftflow.kernel.errors import LimitExceeded, PermanentError, ToolError, ToolUnavailable
from shiftflow.kernel.tools.base import ARTIFACT_INPUT, ARTIFACT_OUTPUT, Tool, ToolContext

#: Demuxers allowed to read an input (ffmpeg's names; "mov,mp4,..." is one demuxer).
INPUT_FORMATS = "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi,flv,mpegts,mp3,wav,ogg,flac,aac,gif"
#: Output formats: ffmpeg muxer and codec arguments for each.
OUTPUTS: dict[str, tuple[str, list[str], list[str], str]] = {
    # format: (muxer, video args, audio args, MIME)
    "mp4": ("mp4", ["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p"], ["-c:a", "aac"], "video/mp4"),
    "webm": ("webm", ["-c:v", "libvpx", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "1M"],
             ["-c:a", "libopus"], "video/webm"),
    "gif": ("gif", ["-c:v", "gif"], [], "image/gif"),
    "mp3": ("mp3", [], ["-c:a", "libmp3lame"], "audio/mpeg"),
    "m4a": ("ipod", [], ["-c:a", "aac"], "audio/mp4"),
    "ogg": ("ogg", [], ["-c:a", "libvorbis"], "audio/ogg"),
    "wav": ("wav", [], ["-c:a", "pcm_s16le"], "audio/wav"),
}
_AUDIO_ONLY = frozenset({"mp3", "m4a", "ogg", "wav"})
_SAFE_INPUT = ["-protocol_whitelist", "file", "-format_whitelist", INPUT_FORMATS]


def _binary(ctx: ToolContext, which: str) -> str:
    settings = ctx.settings
    if settings is None:
        return f"/usr/bin/{which}"
    return settings.ffprobe_path if which == "ffprobe" else settings.ffmpeg_path


def _run(args: list[str], timeout: float, what: str) -> subprocess.CompletedProcess[bytes]:
    try:
        # subprocess.run kills the child (by its pid) when the timeout expires.
        return subprocess.run(args, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)
    except FileNotFoundError:
        raise PermanentError(f"{args[0]} not found (SHIFTFLOW_FFMPEG_PATH/FFPROBE_PATH; apt-get install ffmpeg)") from None
    except subprocess.TimeoutExpired:
        raise ToolUnavailable(f"{what} took longer than {timeout:g} s (SHIFTFLOW_MEDIA_TIMEOUT_SECONDS)") from None


def _stderr(run: subprocess.CompletedProcess[bytes]) -> str:
    return run.stderr.decode("utf-8", "replace").strip().splitlines()[-1:][0][:300] if run.stderr.strip() else "?"


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _fps(value: Any) -> float | None:
    if not isinstance(value, str) or "/" not in value:
        return None
    num, _, den = value.partition("/")
    try:
        return round(int(num) / int(den), 3) if int(den) else None
    except ValueError:
        return None


def probe_file(path: Path, ctx: ToolContext) -> dict[str, Any]:
    """What ffprobe says about a local file: duration, container, size and streams.

    Raises:
        ToolError: not a media file ffprobe reads with the allowed formats.
    """
    run = _run([_binary(ctx, "ffprobe"), "-v", "error", *_SAFE_INPUT, "-print_format", "json",
                "-show_format", "-show_streams", str(path)], ctx.limits.media_timeout, "ffprobe")
    if run.returncode != 0:
        raise ToolError(f"with.input: not a media file ffprobe can read ({_stderr(run)})")
    info = json.loads(run.stdout or b"{}")
    fmt = info.get("format") or {}
    streams = []
    for stream in info.get("streams") or []:
        kind = stream.get("codec_type")
        if kind not in ("video", "audio"):
            continue
        entry: dict[str, Any] = {"index": stream.get("index"), "type": kind, "codec": stream.get("codec_name")}
        if kind == "video":
            entry.update(width=stream.get("width"), height=stream.get("height"), fps=_fps(stream.get("avg_frame_rate")))
        else:
            entry.update(sample_rate=int(stream.get("sample_rate") or 0) or None, channels=stream.get("channels"))
        streams.append(entry)
    return {
        "format": fmt.get("format_name"),
        "duration": _number(fmt.get("duration")),
        "size": int(fmt.get("size") or path.stat().st_size),
        "bit_rate": int(fmt["bit_rate"]) if str(fmt.get("bit_rate", "")).isdigit() else None,
        "streams": streams,
    }


def probe(params: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    """The ``media.probe`` tool: describe an audio/video artifact."""
    with ctx.artifacts.local_path(location_of(params["input"])) as path:
        return probe_file(path, ctx)


def _check_limits(info: dict[str, Any], params: dict[str, Any], ctx: ToolContext) -> float:
    duration = info.get("duration")
    if duration is None:
        raise ToolError("with.input: ffprobe found no duration: cannot check it against the limit")
    start = float(params.get("start", 0))
    length = min(duration - start, float(params["duration"])) if params.get("duration") else duration - start
    if length <= 0:
        raise ToolError(f"with.start: {start:g} s is past the end of the input ({duration:g} s)")
    if length > ctx.limits.max_duration:
        raise LimitExceeded(
            f"with.input: {length:g} s of media to transcode is over the limit of {ctx.limits.max_duration:g} s "
            "(SHIFTFLOW_MEDIA_MAX_DURATION_SECONDS)"
        )
    for stream in info["streams"]:
        if stream["type"] == "video" and stream.get("width") and stream.get("height"):
            if stream["width"] * stream["height"] > ctx.limits.max_pixels:
                raise LimitExceeded(
                    f"with.input: video of {stream['width']}x{stream['height']} pixels is over the limit of "
                    f"{ctx.limits.max_pixels} (SHIFTFLOW_MEDIA_MAX_PIXELS)"
                )
    return length


def transcode(params: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    """The ``media.transcode`` tool: convert, trim and scale down an audio/video artifact.

    Returns:
        ``{"format", "duration", "artifact"}`` plus the output's streams.

    Raises:
        LimitExceeded: input duration or picture size over the limits, or output over the artifact limit.
        ToolError: unreadable input, no stream for the output, ffmpeg refused.
        ToolUnavailable: ffmpeg ran past its timeout.
    """
    fmt = params["format"]
    muxer, video_args, audio_args, mime = OUTPUTS[fmt]
    with ctx.artifacts.local_path(location_of(params["input"])) as source:
        info = probe_file(source, ctx)
        length = _check_limits(info, params, ctx)
        has_video = any(s["type"] == "video" for s in info["streams"])
        has_audio = any(s["type"] == "audio" for s in info["streams"])
        want_video = fmt not in _AUDIO_ONLY and has_video
        want_audio = bool(audio_args) and has_audio and params.get("audio", True)
        if not want_video and not want_audio:
            raise ToolError(f"with.format: {fmt} needs a {'video' if fmt not in _AUDIO_ONLY else 'audio'} stream "
                            "and the input has none")
        args = [_binary(ctx, "ffmpeg"), "-nostdin", "-hide_banner", "-v", "error", "-y"]
        if params.get("start"):
            args += ["-ss", str(float(params["start"]))]
        args += [*_SAFE_INPUT, "-i", str(source), "-t", f"{length:.3f}"]
        if want_video:
            max_w, max_h = params.get("max_width", 65_535), params.get("max_height", 65_535)
            scale = f"scale=w='min(iw,{max_w})':h='min(ih,{max_h})':force_original_aspect_ratio=decrease"
            if fmt == "gif":
                args += ["-vf", f"fps={params.get('fps', 10)},{scale}", *video_args]
            else:
                args += ["-vf", f"{scale}:force_divisible_by=2", *video_args]
        else:
            args += ["-vn"]
        args += audio_args if want_audio else ["-an"]
        cap = ctx.limits.max_artifact_bytes
        with tempfile.TemporaryDirectory(prefix="shiftflow-media-") as work:
            out = Path(work) / f"out.{fmt}"
            run = _run([*args, "-fs", str(cap), "-f", muxer, str(out)], ctx.limits.media_timeout, "ffmpeg")
            if run.returncode != 0 or not out.exists():
                raise ToolError(f"ffmpeg could not make {fmt}: {_stderr(run)}")
            if out.stat().st_size >= cap:
                raise LimitExceeded(f"the {fmt} output reached the artifact limit of {cap} bytes (SHIFTFLOW_ARTIFACT_MAX_BYTES)")
            result = probe_file(out, ctx)
            stem = (params.get("name") or "media").rsplit(".", 1)[0]
            with out.open("rb") as stream:
                ref = ctx.artifacts.put(stream, f"{stem}.{fmt}", mime)
    return {"format": fmt, "duration": result["duration"], "streams": result["streams"], "artifact": ref.to_dict()}


_STREAMS = {"type": "array", "items": {"type": "object"}}

TOOLS = [
    Tool(
        name="media.probe",
        description="Describe an audio/video artifact: container, duration, size, streams (ffprobe).",
        category="media",
        queue="tools.media",
        effect="repeatable",
        params_schema={"type": "object", "required": ["input"], "additionalProperties": False,
                       "properties": {"input": ARTIFACT_INPUT}},
        result_schema={"type": "object", "required": ["format", "duration", "size", "streams"],
                       "properties": {"format": {"type": ["string", "null"]}, "duration": {"type": ["number", "null"]},
                                      "size": {"type": "integer"}, "bit_rate": {"type": ["integer", "null"]},
                                      "streams": _STREAMS}},
        run=probe,
    ),
    Tool(
        name="media.transcode",
        description="Convert, trim and scale down an audio/video artifact with ffmpeg into a new artifact.",
        category="media",
        queue="tools.media",
        effect="repeatable",
        params_schema={
            "type": "object",
            "required": ["input", "format"],
            "additionalProperties": False,
            "properties": {
                "input": ARTIFACT_INPUT,
                "format": {"enum": sorted(OUTPUTS)},
                "start": {"type": "number", "minimum": 0},
                "duration": {"type": "number", "exclusiveMinimum": 0},
                "max_width": {"type": "integer", "minimum": 16, "maximum": 8192},
                "max_height": {"type": "integer", "minimum": 16, "maximum": 8192},
                "fps": {"type": "integer", "minimum": 1, "maximum": 30},
                "audio": {"type": "boolean"},
                "name": {"type": "string", "minLength": 1, "maxLength": 200},
            },
        },
        result_schema={"type": "object", "required": ["format", "duration", "streams", "artifact"],
                       "properties": {"format": {"type": "string"}, "duration": {"type": ["number", "null"]},
                                      "streams": _STREAMS, "artifact": ARTIFACT_OUTPUT}},
        run=transcode,
    ),
]
