"""crictld: a Kubernetes CRI runtime whose desired state lives in SQLite.

Layers (arrows point down only; enforced by import-linter, see pyproject.toml):

    cli -> daemon -> api -> reconciler -> store | containerd | network -> errors | config | gen
"""

__version__ = "0.1.0"
