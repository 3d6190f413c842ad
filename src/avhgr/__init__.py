"""avhgr: audio-visual emotion recognition with the Soft-HGR correlation loss.

    import avhgr
    model = avhgr.load_model()             # the built-in model; or a run folder of `avhgr train`
    model.predict("clip.mp4", hop=0.5)     # emotion, probabilities, evidence, timeline
"""

__version__ = "0.2.0"
__all__ = ["__version__", "load_model", "Prediction"]


def load_model(name=None, device: str = "auto", visual_features=None, windows=None):
    """The built-in model (``None``, ``"builtin"``, ``"builtin:speech"``, ``"builtin:face"``) or a run
    folder; see ``avhgr.api.load_model``."""
    from .api import load_model as _load

    return _load(name, device, visual_features, windows)


def __getattr__(name):  # avhgr.Prediction without importing torch at `import avhgr`
    if name == "Prediction":
        from .api import Prediction

        return Prediction
    raise AttributeError(f"module 'avhgr' has no attribute {name!r}")
