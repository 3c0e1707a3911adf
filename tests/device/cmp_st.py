# tests/device/cmp_st.py A B: compares two safetensors files tensor by tensor (data bytes; metadata ignored)
import json, struct, sys
def load(p):
    b = open(p, 'rb').read(); n = struct.unpack('<Q', b[:8])[0]; h = json.loads(b[8:8+n]); d = b[8+n:]
    h.pop('__metadata__', None); return {k: (v['dtype'], d[v['data_offsets'][0]:v['data_offsets'][1]]) for k, v in h.items()}
a, b = load(sys.argv[1]), load(sys.argv[2])
diff = 0
for k in sorted(set(a) | set(b)):
    if k not in a or k not in b: print('missing', k); diff += 1; continue
    if a[k] != b[k]:
        x = struct.unpack('<%df' % (len(a[k][1])//4), a[k][1]); y = struct.unpack('<%df' % (len(b[k][1])//4), b[k][1])
        nd = sum(1 for i, j in zip(x, y) if i != j); md = max(abs(i-j) for i, j in zip(x, y))
        print('differ %s: %d of %d elements, max |d| %.3g' % (k, nd, len(x), md)); diff += 1
print('%d of %d tensors differ' % (diff, len(set(a) | set(b))))
