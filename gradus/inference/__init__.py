"""Using a trained model: load a run, checkpoint or exported directory (:mod:`gradus.inference.load`),
sample text (:mod:`gradus.inference.generate`) and score it on any source (:mod:`gradus.inference.scoring`)."""
