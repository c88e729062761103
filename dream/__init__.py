"""Lossless speculative decoding for vision-language models (DREAM). Import submodules directly."""
