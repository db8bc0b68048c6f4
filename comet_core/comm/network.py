"""Network model: bandwidth and latency turn a ledger into modelled communication time.

time = compute_s + rounds * latency_s + bytes_on_busiest_direction * 8 / bandwidth_bps, per stage.
A round in which both parties send at once costs one one-way latency (messages cross in flight);
bytes are those of the busier direction P0->P1 or P1->P0, since the link is full duplex.
"""

from __future__ import annotations

from dataclasses import dataclass

from comet_core.errors import require


@dataclass(frozen=True)
class Network:
    name: str
    bandwidth_bps: float
    latency_s: float

    def __post_init__(self) -> None:
        require(isinstance(self.bandwidth_bps, (int, float)) and self.bandwidth_bps > 0,
                f"network.bandwidth_bps must be > 0 bits/s, got {self.bandwidth_bps}")
        require(isinstance(self.latency_s, (int, float)) and self.latency_s >= 0,
                f"network.latency_s must be >= 0 seconds (one-way), got {self.latency_s}")

    @classmethod
    def from_cfg(cls, cfg) -> "Network":
        """The link of a network group's typed params (``network_params(cfg.network)``, config/typed.py):
        its attributes name, bandwidth_bps and latency_s; a value that is no number is a ConfigError."""
        try:
            bw, lat = float(cfg.bandwidth_bps), float(cfg.latency_s)
        except (TypeError, ValueError):
            require(False, f"network.bandwidth_bps and network.latency_s must be numbers, got "
                           f"{cfg.bandwidth_bps!r} and {cfg.latency_s!r}")
        return cls(str(cfg.name), bw, lat)

    def comm_seconds(self, rounds: int, busiest_direction_bytes: int) -> float:
        return rounds * self.latency_s + busiest_direction_bytes * 8.0 / self.bandwidth_bps
