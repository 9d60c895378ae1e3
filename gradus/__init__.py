"""gradus: curriculum pretraining for GPT-style language models.

Training starts on short sequences with large batches and high learning rates and grows in stages to
long sequences, while the data mix shifts. ARCHITECTURE.md (beside the package) maps the layers and the data flow.
"""

__version__ = "0.3.0.dev0"
"""The release (CHANGELOG.md); the distribution is ``gradus-lm`` (pyproject.toml reads it from here). Between
releases it is the next one's ``.dev0`` (PEP 440), so a build of unreleased code, which may change defaults
(CHANGELOG's "Unreleased"), never claims the last release's number; a release sets it and dates its section."""
