"""Weight-only quantized bases: packed formats, checkpoint readers (GPTQ, AWQ) and the base product."""
