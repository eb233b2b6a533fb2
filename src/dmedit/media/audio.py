"""The audio half of writing a clip: the source's audio for the edited span, muxed with the video.

Audio that browsers play from MP4 (aac, mp3, opus, flac) is copied without re-encoding and cut at
packet boundaries: a packet is kept when its midpoint lies in the span, so each end is within half
an audio frame (AAC: 1024 samples, 23 ms at 44.1 kHz) and the length within one frame; the packet
before the span goes along to warm the decoder up (it plays no sound). Other codecs are decoded,
cut to the sample and re-encoded to AAC (mono stays mono, more channels become stereo).
"""

from __future__ import annotations

from fractions import Fraction
from typing import Iterable

import av
import numpy as np

BROWSER_MP4_AUDIO = frozenset({"aac", "mp3", "opus", "flac"})  # copied as they are; others become AAC


def mux_interleaved(*, container, video, pictures: Iterable[av.VideoFrame], audio_packets: list) -> None:
    """Encode `pictures` (VideoFrames with their pts) and mux them with `audio_packets` in time order."""
    pending = list(reversed(audio_packets))
    for picture in pictures:
        for packet in video.encode(picture):
            while pending and _packet_seconds(pending[-1]) <= _packet_seconds(packet):
                container.mux(pending.pop())
            container.mux(packet)
    container.mux(video.encode())
    container.mux(list(reversed(pending)))


def _packet_seconds(packet: av.Packet) -> float:
    stamp = packet.dts if packet.dts is not None else packet.pts
    return float(stamp * packet.time_base) if stamp is not None else 0.0


def audio_packets(*, container, source_container, start: float, end: float) -> list:
    """Add to `container` an audio stream for the source's first audio track; return its packets
    for [start, end) seconds counted from the source's first video frame (none without audio)."""
    if not source_container.streams.audio:
        return []
    source_audio = source_container.streams.audio[0]
    videos = source_container.streams.video
    if videos and videos[0].start_time is not None:  # span times count from the first video frame
        origin = float(videos[0].start_time * videos[0].time_base)
        start, end = start + origin, end + origin
    source = {"source_container": source_container, "source_audio": source_audio, "start": start, "end": end}
    if source_audio.codec_context.codec.canonical_name in BROWSER_MP4_AUDIO:
        return _copied_audio(output_audio=container.add_stream_from_template(source_audio), **source)
    return _encoded_audio(container=container, **source)


def _copied_audio(*, source_container, source_audio, output_audio, start: float, end: float) -> list:
    time_base = source_audio.time_base
    if start > 1:  # a second early, so the packet before the span is there to warm the decoder up
        source_container.seek(int((start - 1) / time_base), stream=source_audio, backward=True)
    packets, offset, previous = [], None, None
    for packet in source_container.demux(source_audio):
        if packet.pts is None or not packet.size:
            continue
        middle = float((packet.pts + (packet.duration or 0) / 2) * time_base)
        if middle >= end:
            break
        if middle < start:
            previous = packet
            continue
        if offset is None:
            offset = packet.pts
            if previous is not None:  # decoder warm-up: its samples come before 0 and are skipped
                packets.append(_retimed(packet=previous, offset=offset, stream=output_audio))
        packets.append(_retimed(packet=packet, offset=offset, stream=output_audio))
    return packets


def _retimed(*, packet: av.Packet, offset: int, stream) -> av.Packet:
    packet.pts, packet.dts = packet.pts - offset, packet.pts - offset
    packet.stream = stream
    return packet


def _encoded_audio(*, container, source_container, source_audio, start: float, end: float) -> list:
    """Decode, cut to the sample, and encode to AAC at the source rate (mono stays mono, else stereo)."""
    rate = source_audio.codec_context.sample_rate
    layout = "mono" if source_audio.codec_context.layout.nb_channels == 1 else "stereo"
    output_audio = container.add_stream("aac", rate=rate, layout=layout)
    to_planar = av.AudioResampler(format="fltp", layout=layout, rate=rate)
    first_sample, end_sample = round(start * rate), round(end * rate)
    packets, written = [], 0
    for decoded in source_container.decode(source_audio):
        if decoded.pts is not None and float(decoded.pts * decoded.time_base) * rate >= end_sample:
            break
        for planar in to_planar.resample(decoded):
            begin = round(float(planar.pts * planar.time_base) * rate)
            keep = planar.to_ndarray()[:, max(0, first_sample - begin) : max(0, end_sample - begin)]
            if keep.shape[1] == 0:
                continue
            piece = av.AudioFrame.from_ndarray(np.ascontiguousarray(keep), format="fltp", layout=layout)
            piece.sample_rate, piece.pts, piece.time_base = rate, written, Fraction(1, rate)
            written += keep.shape[1]
            packets.extend(output_audio.encode(piece))
    packets.extend(output_audio.encode(None))
    return packets
