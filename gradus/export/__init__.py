"""Models that leave gradus: the Hugging Face Llama layout (:mod:`gradus.export.llama`, pure mapping) and
the directory writer/reader (:mod:`gradus.export.hf`). Torch is imported only inside the functions."""
