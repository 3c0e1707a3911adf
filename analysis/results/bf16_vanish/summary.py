# summary.py TAG...: per family, the mean fraction of elements changed per step
# (hax-pdiff's per-step files of resume.sh in DIR, default steps/ beside this file).
import glob, os, sys
DIR = os.environ.get('STEPS', os.path.join(os.path.dirname(os.path.abspath(__file__)), 'steps'))
def parse(path):
    fam, mom = {}, {}
    t = open(path).read().split('\n')
    sec = 0
    for l in t:
        if l.startswith('tensor'): sec += 1; continue
        if l.startswith('AdamW'): sec = 10; continue
        if not l.strip() or l.startswith('hax-pdiff'): continue
        p = l.split()
        if p[0] == 'all': p = ['all'] + p[2:]
        if sec == 1: fam[p[0]] = p[1:]
        elif sec == 11: mom[p[0]] = p[1:]
    return fam, mom
pc = lambda s: float(s.rstrip('%'))
fams = ['embeddings.weight','layers.*.norm.weight','layers.*.mixer.E','layers.*.mixer.dt_bias','layers.*.mixer.A_log','layers.*.mixer.D','layers.*.mixer.in_proj.weight','layers.*.mixer.out_proj.weight','layers.*.mixer.conv1d.weight','layers.*.mixer.norm.weight','norm_f.weight','all']
for tag in sys.argv[1:]:
    files = sorted(glob.glob(DIR + '/%s_step400*.txt' % tag))
    print('== %s: %d steps; per family: mean %% of elements changed per step | %% changed over all steps | v down/step, v up/step (all)' % (tag, len(files)))
    tot = glob.glob(DIR + '/%s_steps40000-*.txt' % tag)
    ft, mt = parse(tot[0])
    per = [parse(f) for f in files]
    for k in fams:
        if k not in ft: continue
        ch = sum(100 - pc(f[0][k][1]) for f in per) / len(per)
        print('  %-32s %8.3f%%  %8.3f%%   |u|/lr %s' % (k, ch, 100 - pc(ft[k][1]), ft[k][6]))
    vd = sum(pc(f[1]['all'][3]) for f in per) / len(per); vu = sum(pc(f[1]['all'][4]) for f in per) / len(per)
    print('  v: down %.3f%%/step, up %.3f%%/step; m unchanged %.2f%%/step' % (vd, vu, sum(pc(f[1]['all'][1]) for f in per) / len(per)))
