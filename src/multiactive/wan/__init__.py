"""WAN link emulator: delay, jitter, bandwidth caps, cut and heal, for demos, tests, drills."""

from multiactive.wan.emulator import LinkSpec, WanEmulator, parse_link_spec
from multiactive.wan.shape import LinkShape, Pacer

__all__ = ["LinkShape", "LinkSpec", "Pacer", "WanEmulator", "parse_link_spec"]
