"""Frame or scanner text in, at most one Decision out.

The processing part of the kiosk, separate from capture (sources.py) and
communication (reporter.py): decode, drop repeats of the code still held in
front of the camera, verify, hand the decision on.
"""

from datetime import datetime, timezone

from greengate.decision import Decision


class Cooldown:
    """The same code seen again within `seconds` of its last sighting counts once."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._seen: dict[str, float] = {}

    def admit(self, text: str, now: float) -> bool:
        last = self._seen.get(text)
        self._seen[text] = now  # held continuously: the window slides
        if len(self._seen) > 256:
            self._seen = {t: s for t, s in self._seen.items() if now - s < self.seconds}
        return last is None or now - last >= self.seconds


class Pipeline:
    def __init__(self, decoder, verifier, on_decision=None, cooldown_seconds: float = 3.0,
                 clock=None):
        """verifier: anything with verify(text, at); clock: () -> datetime | None
        (None means the clock is not trusted). Without a clock, `now` is used."""
        self.decoder = decoder
        self.verifier = verifier
        self.on_decision = on_decision
        self.cooldown = Cooldown(cooldown_seconds)
        self.clock = clock

    def process(self, item, now: float) -> Decision | None:
        texts = [item] if isinstance(item, str) else self.decoder.decode(item)
        for text in texts:
            if not self.cooldown.admit(text, now):
                continue
            at = self.clock() if self.clock else datetime.fromtimestamp(now, timezone.utc)
            decision = self.verifier.verify(text, at)
            if self.on_decision:
                self.on_decision(decision, now)
            return decision  # one person at a time: one decision per frame
        return None
