"""Which running sum does torch.cumsum keep for a bf16 tensor along an outer dimension (the
reference's key-selection features, MODEL.md)? Prints, per device, the share of outputs equal to
the fp32 sum rounded once and to a bf16 running sum (rounded after every add): hax's
HAX_KS_CUMSUM_BF16_ACC=0 and =1 (default). Test-side: python3 tests/ref/cumsum_bf16.py"""
import torch

def main():
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 500, 32, generator=g).bfloat16()
    once = torch.cumsum(x.float(), dim=1).bfloat16()
    s, carry = torch.zeros(4, 32).bfloat16(), []
    for t in range(x.shape[1]):
        s = (s.float() + x[:, t].float()).bfloat16()
        carry.append(s)
    carry = torch.stack(carry, 1)
    for dev in devices:
        c = torch.cumsum(x.to(dev), dim=1).cpu()
        print("torch %s %s: equal to the fp32 sum rounded once %.4f, to the bf16 running sum %.4f"
              % (torch.__version__, dev, (c == once).float().mean().item(), (c == carry).float().mean().item()))

if __name__ == "__main__":
    main()
