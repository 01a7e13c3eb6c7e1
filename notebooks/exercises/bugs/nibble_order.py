"""Bug in pack_nibbles: the first code of each pair goes in the LOW nibble (bitsandbytes puts it in the high
one), so the bytes are not those of bitsandbytes and the library's unpack_nibbles swaps every pair."""

import torch


def pack_nibbles(codes):
    codes = codes.reshape(-1).to(torch.uint8)
    return codes[0::2] | (codes[1::2] << 4)  # (n,) -> (n / 2,)
