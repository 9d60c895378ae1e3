"""gradus: curriculum pretraining for GPT-style language models.

Training starts on short sequences with large batches and high learning rates and grows in stages to
long sequences, while the data mix shifts. See DESIGN.md (in ../shared) for the layers.
"""

__version__ = "0.1.0"
