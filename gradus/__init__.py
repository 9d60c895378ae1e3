"""gradus: curriculum pretraining for GPT-style language models.

Training starts on short sequences with large batches and high learning rates and grows in stages to
long sequences, while the data mix shifts. ARCHITECTURE.md (beside the package) maps the layers and the data flow.
"""

__version__ = "0.2.0"
"""The release (CHANGELOG.md); the distribution is ``gradus-lm`` (pyproject.toml reads it from here)."""
