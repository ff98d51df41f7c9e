"""`from specnorm.all import *`: the public API, fastai style (code written for fastaudio runs with this import)."""

from .audio import *
from .augment_functional import *
from .augment_signal import *
from .augment_spectrogram import *
from .cache import *
from .config import *
from .data import *
from .drift import *
from .experiment import *
from .functional import CHANNEL_AXES, GLOBAL_AXES, PCEN_DEFAULTS, FiniteCheck  # noqa: F401
from .instance import *
from .loader import *
from .normalize import *
from .pcen import *
from .preprocess import *
from .signal import *
from .sliding import *
from .spectrogram import *
from .stats import *
from .store import *
from .survey import *
from .synth import *
from .util import *
from .views import *
