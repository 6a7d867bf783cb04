// Module `Quantization`: see README "Architecture".
