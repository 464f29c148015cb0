"""User-facing errors.

Every error a user can cause (bad image, missing folder, missing weights, unknown name) is raised as a
``GeneralADError`` whose message is ONE line naming what went wrong and where. The CLI prints it as
``generalad: error: <message>`` and exits with status 2, without a traceback.
"""


class GeneralADError(Exception):
    """Base class of errors caused by user input; ``str(err)`` is one line."""


class InputError(GeneralADError):
    """An unreadable image, a missing or empty folder, a mask that does not match its image."""


class WeightsError(GeneralADError):
    """Pretrained weights that cannot be found, downloaded or loaded."""


class ConfigError(GeneralADError):
    """An unknown model/backbone name or an invalid option value."""


class NotFittedError(ConfigError):
    """A model used before ``fit()`` or ``load_model()`` (scikit-learn's name for the same thing)."""


def one_line(err: BaseException) -> str:
    """A third-party exception as one line for a GeneralADError message: ``Type: first 300 characters``."""
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:300]}" if text else type(err).__name__

