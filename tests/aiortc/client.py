#!/usr/bin/env python3
"""An aiortc participant for the SFT's interop test.

    client.py --url http://127.0.0.1:PORT --conf CONF --user USER --peer OTHER
              [--timeout 40] [--expect-layer l] [--linger 3] [--hangup-on-stdin] [--verbose]

Joins conference CONF as USER (docs/contract.md section 3): publishes Opus audio and
single-encoding VP8 video from synthetic tracks, offers two recvonly audio and
two recvonly video slots and the data channel `sft`. Before the real SETUP it
checks, on the same pooled aiohttp session, that an oversized body (>64 KiB)
gets 413 `too-large` and that the connection pool still works afterwards.

It then waits until CONFPART shows OTHER in a video and an audio slot and at
least 10 frames of each were decoded on those slots, sends REQSTREAMS asking
for OTHER at quality "low", waits until a CONFPART shows OTHER's video slot at
layer --expect-layer and more frames are decoded there, stays until OTHER has
left (at most --linger seconds), or with --hangup-on-stdin until a line
arrives on stdin (the test's signal that it has seen this client's media),
sends HANGUP and leaves.

Prints exactly one JSON object on stdout (logs go to stderr) and exits 0 when
everything held, 1 otherwise (with "ok": false and "error"). Everything is
bounded by --timeout; a watchdog ends the process should anything still hang.
Media stays on 127.0.0.1: aioice's host addresses are replaced by loopback and
no STUN/TURN server is configured.
"""

import argparse
import asyncio
import fractions
import json
import logging
import math
import os
import sys
import threading
import time
import uuid

import aiohttp
import aioice.ice
import av
from aiortc import (
    MediaStreamTrack,
    RTCBundlePolicy,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError

log = logging.getLogger("aiortc-client")

MIN_FRAMES = 10
OVERSIZED_SDP_BYTES = 100 * 1024


def loopback_only(use_ipv4: bool = True, use_ipv6: bool = True) -> list:
    return ["127.0.0.1"]


# aioice gathers on every interface; keep it on loopback (docs/testing.md).
aioice.ice.get_host_addresses = loopback_only


class Failure(Exception):
    """An expected way for the run to fail; its text becomes the JSON "error"."""


class SineAudioTrack(MediaStreamTrack):
    """20 ms frames of a 440 Hz tone, 48 kHz mono s16, paced in real time."""

    kind = "audio"
    RATE = 48000
    SAMPLES = 960

    def __init__(self) -> None:
        super().__init__()
        self._pts = 0
        self._start = None
        self._phase = 0

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            self._pts += self.SAMPLES
            wait = self._start + self._pts / self.RATE - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        samples = bytearray(self.SAMPLES * 2)
        for i in range(self.SAMPLES):
            v = int(8000 * math.sin(2 * math.pi * 440 * (self._phase + i) / self.RATE))
            samples[2 * i : 2 * i + 2] = v.to_bytes(2, "little", signed=True)
        self._phase += self.SAMPLES
        frame = av.AudioFrame(format="s16", layout="mono", samples=self.SAMPLES)
        frame.planes[0].update(bytes(samples))
        frame.pts = self._pts
        frame.sample_rate = self.RATE
        frame.time_base = fractions.Fraction(1, self.RATE)
        return frame


class PatternVideoTrack(MediaStreamTrack):
    """320x240 yuv420p frames at ~15 fps with a moving bar pattern."""

    kind = "video"
    WIDTH = 320
    HEIGHT = 240
    FPS = 15
    CLOCK = 90000

    def __init__(self) -> None:
        super().__init__()
        self._n = 0
        self._start = None
        base = bytes((x * 255) // self.WIDTH for x in range(self.WIDTH))
        self._row = base

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            self._n += 1
            wait = self._start + self._n / self.FPS - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        n = self._n
        frame = av.VideoFrame(self.WIDTH, self.HEIGHT, "yuv420p")
        # luma: a horizontal gradient that scrolls, plus a bright moving bar
        shift = (n * 8) % self.WIDTH
        row = self._row[shift:] + self._row[:shift]
        bar_y = (n * 4) % self.HEIGHT
        y_plane = frame.planes[0]
        pad = b"\x00" * (y_plane.line_size - self.WIDTH)
        bright = b"\xeb" * self.WIDTH
        rows = []
        for y in range(self.HEIGHT):
            rows.append((bright if bar_y <= y < bar_y + 16 else row) + pad)
        y_plane.update(b"".join(rows))
        for idx, value in ((1, (n * 3) % 256), (2, 128)):
            plane = frame.planes[idx]
            plane.update(bytes([value]) * (plane.line_size * (self.HEIGHT // 2)))
        frame.pts = int(n * self.CLOCK / self.FPS)
        frame.time_base = fractions.Fraction(1, self.CLOCK)
        return frame


class Client:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.result: dict = {
            "user": args.user,
            "peer": args.peer,
            "conf": args.conf,
            "keepalive": {},
            "hangup_sent": False,
            "ok": False,
        }
        self.pc = None
        self.channel = None
        self.channel_open = asyncio.Event()
        self.confpart = None
        self.confpart_count = 0
        self.frames: dict = {}  # mid -> decoded frames
        self.width: dict = {}  # mid -> width of the last decoded video frame
        self.kind_of_mid: dict = {}
        self.readers: list = []
        self.changed = asyncio.Event()

    # ---- helpers -------------------------------------------------------

    def deadline_left(self) -> float:
        return self.deadline - time.monotonic()

    async def wait_for(self, what: str, predicate) -> object:
        """Waits until predicate() returns something truthy or time runs out."""
        while True:
            value = predicate()
            if value:
                return value
            left = self.deadline_left()
            if left <= 0:
                raise TimeoutError(f"timed out waiting for {what}")
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), timeout=min(left, 0.2))
            except asyncio.TimeoutError:
                pass

    def send(self, message: dict) -> None:
        text = json.dumps(message)
        log.info("-> %s", text)
        self.channel.send(text)

    def participant(self, userid: str):
        for p in (self.confpart or {}).get("participants", []):
            if p.get("userid") == userid:
                return p
        return None

    def slots(self, kind: str, userid: str) -> list:
        return [
            s
            for s in (self.confpart or {}).get("slots", [])
            if s.get("kind") == kind and s.get("userid") == userid
        ]

    # ---- media -----------------------------------------------------------

    def on_track(self, track) -> None:
        mid = None
        for t in self.pc.getTransceivers():
            if t.receiver.track is track:
                mid = t.mid
        log.info("track %s on mid %s", track.kind, mid)
        self.kind_of_mid[mid] = track.kind
        self.frames.setdefault(mid, 0)
        self.readers.append(asyncio.ensure_future(self.read_track(mid, track)))

    async def read_track(self, mid, track) -> None:
        try:
            while True:
                frame = await track.recv()
                self.frames[mid] = self.frames.get(mid, 0) + 1
                if isinstance(frame, av.VideoFrame):
                    if self.width.get(mid) != frame.width:
                        log.info("mid %s: video %dx%d", mid, frame.width, frame.height)
                    self.width[mid] = frame.width
                self.changed.set()
        except MediaStreamError:
            pass
        except asyncio.CancelledError:
            pass

    # ---- data channel ------------------------------------------------------

    def on_message(self, message) -> None:
        if isinstance(message, bytes):
            message = message.decode("utf-8", "replace")
        try:
            msg = json.loads(message)
        except ValueError:
            log.warning("<- not JSON: %r", message[:200])
            return
        kind = msg.get("type")
        if kind == "CONFPART":
            log.info("<- %s", message)
            self.confpart = msg
            self.confpart_count += 1
            self.changed.set()
        elif kind == "SPEAKERS":
            log.debug("<- %s", message)
        else:
            log.info("<- %s", message)

    # ---- signalling --------------------------------------------------------

    def setup_body(self, sessid: str, sdp: str) -> dict:
        return {
            "version": "3.0",
            "type": "SETUP",
            "sessid": sessid,
            "resp": False,
            "src_userid": self.args.user,
            "src_clientid": self.args.user + "-aiortc",
            "props": {"type": "offer", "sdp": sdp},
        }

    async def signal(self, http: aiohttp.ClientSession, offer_sdp: str) -> str:
        url = f"{self.args.url.rstrip('/')}/sft/{self.args.conf}"
        keepalive = self.result["keepalive"]

        # 1. oversized body: 413 too-large, and the pool must stay usable
        padded = offer_sdp + "a=x-padding:" + "x" * OVERSIZED_SDP_BYTES + "\r\n"
        body = json.dumps(self.setup_body(uuid.uuid4().hex, padded))
        try:
            async with http.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
                keepalive["oversized_status"] = resp.status
                text = await resp.text()
                try:
                    error = json.loads(text)
                except ValueError:
                    error = None
                keepalive["oversized_error"] = error.get("error") if isinstance(error, dict) else None
                if keepalive["oversized_error"] is None:
                    keepalive["oversized_body"] = text[:200]
        except aiohttp.ClientError as e:
            keepalive["oversized_status"] = None
            keepalive["oversized_exception"] = f"{type(e).__name__}: {e}"
        log.info("oversized SETUP (%d bytes): %s", len(body), keepalive)

        # 2. the real SETUP on the same session
        self.sessid = uuid.uuid4().hex
        try:
            async with http.post(url, json=self.setup_body(self.sessid, offer_sdp)) as resp:
                keepalive["setup_status"] = resp.status
                text = await resp.text()
        except aiohttp.ClientError as e:
            keepalive["setup_status"] = None
            keepalive["setup_exception"] = f"{type(e).__name__}: {e}"
            raise Failure(f"SETUP request failed: {type(e).__name__}: {e}") from e
        if keepalive["setup_status"] != 200:
            raise Failure(f"SETUP answered {keepalive['setup_status']}: {text[:500]}")
        answer = json.loads(text)
        sdp = answer["props"]["sdp"]
        log.info("SDP answer:\n%s", sdp)
        if keepalive.get("oversized_status") != 413 or keepalive.get("oversized_error") != "too-large":
            raise Failure(f"oversized SETUP did not get 413 too-large: {keepalive}")
        return sdp

    # ---- the run -----------------------------------------------------------

    async def run(self) -> None:
        args = self.args
        self.deadline = time.monotonic() + args.timeout

        self.pc = pc = RTCPeerConnection(
            RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
        )

        @pc.on("connectionstatechange")
        def _state() -> None:
            log.info("connection state %s", pc.connectionState)
            self.changed.set()

        pc.on("track", self.on_track)

        pc.addTransceiver(SineAudioTrack(), direction="sendonly")
        video = pc.addTransceiver(PatternVideoTrack(), direction="sendonly")
        vp8 = [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType.lower() == "video/vp8"]
        video.setCodecPreferences(vp8)
        for kind in ("audio", "audio", "video", "video"):
            pc.addTransceiver(kind, direction="recvonly")

        self.channel = pc.createDataChannel("sft")
        self.channel.on("open", lambda: (self.channel_open.set(), self.changed.set()))
        self.channel.on("message", self.on_message)

        await pc.setLocalDescription(await pc.createOffer())  # gathers (no trickle)
        offer_sdp = pc.localDescription.sdp
        log.debug("SDP offer:\n%s", offer_sdp)

        timeout = aiohttp.ClientTimeout(total=max(1.0, min(15.0, self.deadline_left())))
        async with aiohttp.ClientSession(timeout=timeout) as http:
            answer_sdp = await self.signal(http, offer_sdp)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer_sdp, type="answer"))

        def failed():
            if pc.connectionState == "failed":
                raise Failure("peer connection failed (ICE/DTLS)")
            return False

        await self.wait_for("data channel open", lambda: failed() or self.channel_open.is_set())
        log.info("data channel open")

        peer = args.peer

        def receiving():
            failed()
            if self.participant(peer) is None:
                return None
            v = [s for s in self.slots("video", peer) if self.frames.get(s.get("mid"), 0) >= MIN_FRAMES]
            a = [s for s in self.slots("audio", peer) if self.frames.get(s.get("mid"), 0) >= MIN_FRAMES]
            return (v[0], a[0]) if v and a else None

        try:
            vslot, aslot = await self.wait_for(f"{peer}'s audio and video ({MIN_FRAMES} frames each)", receiving)
        finally:
            self.result["participants"] = sorted(
                p.get("userid") for p in (self.confpart or {}).get("participants", [])
            )
        self.result["video_frames_from_peer"] = self.frames[vslot["mid"]]
        self.result["audio_frames_from_peer"] = self.frames[aslot["mid"]]
        self.result["video_mid_before"] = vslot["mid"]
        self.result["layer_before_reqstreams"] = vslot.get("layer")
        self.result["width_before"] = self.width.get(vslot["mid"])

        p = self.participant(peer)
        self.send(
            {
                "type": "REQSTREAMS",
                "streams": [
                    {"userid": peer, "clientid": p.get("clientid"), "domain": p.get("domain"), "quality": "low"}
                ],
            }
        )

        def switched():
            failed()
            for s in self.slots("video", peer):
                if s.get("layer") == args.expect_layer:
                    return s
            return None

        slot = await self.wait_for(f"{peer}'s video at layer {args.expect_layer!r}", switched)
        mid = slot["mid"]
        self.result["layer_after_reqstreams"] = slot.get("layer")
        self.result["video_mid_after"] = mid
        base = self.frames.get(mid, 0)
        await self.wait_for(
            f"{MIN_FRAMES} frames after REQSTREAMS",
            lambda: failed() or self.frames.get(mid, 0) - base >= MIN_FRAMES,
        )
        self.result["frames_after_reqstreams"] = self.frames[mid] - base
        self.result["width_after"] = self.width.get(mid)

        if args.hangup_on_stdin:
            await self.wait_for_stdin_line()
        # Stay in the call (still publishing) until OTHER has left or --linger
        # seconds pass, so a peer that finishes later still gets our media.
        linger_until = time.monotonic() + max(0.0, min(args.linger, self.deadline_left() - 2.0))
        while self.participant(peer) is not None and time.monotonic() < linger_until:
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), timeout=0.2)
            except asyncio.TimeoutError:
                pass
        self.result["peer_left_first"] = self.participant(peer) is None

        self.send({"type": "HANGUP"})
        self.result["hangup_sent"] = True
        await asyncio.sleep(1.0)
        self.result["ok"] = True

    async def wait_for_stdin_line(self) -> None:
        """Keeps publishing until the caller writes a line (or closes stdin)."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        try:
            await asyncio.wait_for(reader.readline(), timeout=max(0.1, self.deadline_left()))
        except asyncio.TimeoutError as e:
            raise TimeoutError("timed out waiting for the go-ahead to hang up on stdin") from e

    async def close(self) -> None:
        for task in self.readers:
            task.cancel()
        if self.pc is not None:
            try:
                await asyncio.wait_for(self.pc.close(), timeout=5)
            except Exception as e:  # noqa: BLE001 - closing is best effort
                log.warning("closing the peer connection: %s", e)
        self.result["frames_per_mid"] = {str(k): v for k, v in sorted(self.frames.items(), key=lambda kv: str(kv[0]))}
        self.result["confparts_received"] = self.confpart_count


def emit(result: dict) -> None:
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


async def main(args: argparse.Namespace) -> dict:
    client = Client(args)
    try:
        await asyncio.wait_for(client.run(), timeout=args.timeout + 5)
    except (asyncio.TimeoutError, TimeoutError) as e:
        client.result["error"] = str(e) or f"timed out after {args.timeout} s"
        log.error("%s", client.result["error"])
    except Failure as e:
        client.result["error"] = str(e)
        log.error("%s", e)
    except Exception as e:  # noqa: BLE001 - every failure becomes the JSON "error"
        log.exception("client failed")
        client.result["error"] = f"{type(e).__name__}: {e}"
    finally:
        await client.close()
    if not client.result["ok"] and "error" not in client.result:
        client.result["error"] = "unknown failure"
    return client.result


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True, help="signalling base URL, e.g. http://127.0.0.1:8585")
    ap.add_argument("--conf", required=True, help="conference id")
    ap.add_argument("--user", required=True, help="own user id")
    ap.add_argument("--peer", required=True, help="the other participant's user id")
    ap.add_argument("--timeout", type=float, default=40.0, help="bound for the whole run, seconds")
    ap.add_argument(
        "--expect-layer", default="l", help="layer expected in OTHER's video slot after REQSTREAMS low (default l)"
    )
    ap.add_argument(
        "--linger",
        type=float,
        default=3.0,
        help="after the checks, stay up to this many seconds until OTHER leaves, then HANGUP (default 3)",
    )
    ap.add_argument(
        "--hangup-on-stdin",
        action="store_true",
        help="after the checks, keep publishing until a line arrives on stdin, then linger and HANGUP",
    )
    ap.add_argument("--verbose", action="store_true", help="debug logs (aiortc's too) on stderr")
    return ap.parse_args()


if __name__ == "__main__":
    args = parse_args()
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format=f"%(asctime)s {args.user} %(name)s %(levelname)s %(message)s",
    )
    log.setLevel(logging.DEBUG if args.verbose else logging.INFO)

    def watchdog() -> None:
        emit({"user": args.user, "ok": False, "error": "watchdog: the client hung past its timeout"})
        os._exit(1)

    timer = threading.Timer(args.timeout + 20, watchdog)
    timer.daemon = True
    timer.start()
    result = asyncio.run(main(args))
    timer.cancel()
    emit(result)
    sys.stderr.flush()
    # aiortc's codec threads must not keep the process alive past its result
    os._exit(0 if result.get("ok") else 1)
