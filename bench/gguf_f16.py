"""An f16 GGUF of a quantized GGUF's weights, for timing llama.cpp at f16 beside the file's own quantization.

Every tensor is dequantized with the `gguf` package (the same values transformers' GGUF loader produces, which
is the fp32 model FaithForge imports) and written back as F16 (matrices) or F32 (1-D tensors: norms, as
llama.cpp's own converter keeps them); all metadata is copied, with `general.file_type` set to MOSTLY_F16.
So the f16 file and the quantized file hold the same weight values up to f16 rounding: a speed difference
between them is the kernels', not the model's.

    python bench/gguf_f16.py IN.gguf OUT.gguf
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def write_f16_gguf(source: Path, out: Path) -> Path:
    import gguf
    from gguf.quants import dequantize

    reader = gguf.GGUFReader(str(source))
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    tmp = out.with_suffix(out.suffix + ".tmp")
    writer = gguf.GGUFWriter(str(tmp), arch)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue  # written by GGUFWriter itself
        value = field.contents()
        if field.name == gguf.Keys.General.FILE_TYPE:
            value = int(gguf.LlamaFileType.MOSTLY_F16)
        sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, value, field.types[0], sub_type=sub_type)
    for tensor in reader.tensors:
        values = dequantize(tensor.data, tensor.tensor_type).reshape([int(d) for d in reversed(tensor.shape)])
        values = values.astype(np.float32 if values.ndim == 1 else np.float16)
        writer.add_tensor(tensor.name, values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(out)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    print(write_f16_gguf(Path(sys.argv[1]), Path(sys.argv[2])))
