"""Models: lowprec's Llama (``llama``) and Hugging Face checkpoints in and out of it (``hf``)."""

from lowprec.models.hf import load_hf, save_hf

__all__ = ["load_hf", "save_hf"]
