"""The lab's one exception, apart so that it can be caught around importing lab.state
(which raises it when LAB_PROFILE, LAB_DIR's lab.json or a LAB_* variable does not fit)."""


class LabError(Exception):
    """A lab problem a person can act on; the message says what and what to do."""
