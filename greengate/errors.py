"""The one exception type the decoding stages raise; the verifier turns it into a reason."""


class Rejected(Exception):
    """A certificate fails a check. `reason` is a code from decision.Reason."""

    def __init__(self, reason: str, detail: str, sub_reason: str | None = None):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.sub_reason = sub_reason
