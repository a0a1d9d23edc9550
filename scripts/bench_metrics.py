#!/usr/bin/env python3
"""Benchmark: hdpo eval report vs pycocoevalcap on the 590 IU-Xray test reports.

Predictions are deterministic: test study i is "predicted" with the report of
test study (i+1) mod 590. Both sides clean with R2Gen's IU cleaner and compute
BLEU-1..4, METEOR (meteor-1.5.jar -l en -norm) and ROUGE-L, end to end
(pycocoevalcap: imports, jar start-up and paraphrase loading, scoring;
hdpo: the whole `hdpo eval report` process, METEOR tables loaded from
--meteor-data). Prints both timings, the ratio and the two sets of numbers.

usage: python3 scripts/bench_metrics.py --hdpo target/release/hdpo \
           --meteor-data target/meteor-data [--annotation ../shared/data/iu_xray/annotation.json] [--repeat 3]
needs: pip install pycocoevalcap numpy (and java on PATH)
"""
import argparse, json, os, re, statistics, subprocess, sys, tempfile, time


def clean_report_iu_xray(report):
    # R2Gen modules/tokenizers.py
    report_cleaner = lambda t: t.replace('..', '.').replace('..', '.').replace('..', '.').replace('1. ', '') \
        .replace('. 2. ', '. ').replace('. 3. ', '. ').replace('. 4. ', '. ').replace('. 5. ', '. ') \
        .replace(' 2. ', '. ').replace(' 3. ', '. ').replace(' 4. ', '. ').replace(' 5. ', '. ') \
        .strip().lower().split('. ')
    sent_cleaner = lambda t: re.sub('[.,?;*!%^&_+():-\\[\\]{}]', '', t.replace('"', '').replace('/', '')
                                    .replace('\\', '').replace("'", '').strip().lower())
    tokens = [sent_cleaner(sent) for sent in report_cleaner(report) if sent_cleaner(sent) != []]
    return ' . '.join(tokens) + ' .'


def pycoco(rows):
    t0 = time.perf_counter()
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    gts = {i: [clean_report_iu_xray(r['reference'])] for i, r in enumerate(rows)}
    res = {i: [clean_report_iu_xray(r['prediction'])] for i, r in enumerate(rows)}
    out = {}
    b, _ = Bleu(4).compute_score(gts, res)
    for k in range(4):
        out['BLEU_%d' % (k + 1)] = b[k]
    m = Meteor()
    out['METEOR'], _ = m.compute_score(gts, res)
    del m
    out['ROUGE_L'], _ = Rouge().compute_score(gts, res)
    return time.perf_counter() - t0, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--hdpo', default='target/release/hdpo')
    ap.add_argument('--meteor-data', required=True)
    ap.add_argument('--annotation', default='../shared/data/iu_xray/annotation.json')
    ap.add_argument('--repeat', type=int, default=3)
    a = ap.parse_args()
    test = json.load(open(a.annotation))['test']
    n = len(test)
    rows = [{'id': e['id'], 'reference': e['report'], 'prediction': test[(i + 1) % n]['report']}
            for i, e in enumerate(test)]
    tmp = tempfile.NamedTemporaryFile('w', suffix='.jsonl', delete=False)
    for r in rows:
        tmp.write(json.dumps(r) + '\n')
    tmp.close()
    hd_times, hd_out = [], None
    for _ in range(a.repeat):
        t0 = time.perf_counter()
        p = subprocess.run([a.hdpo, 'eval', 'report', '--predictions', tmp.name, '--clean', 'iu_xray',
                            '--meteor-data', a.meteor_data, '--json'], capture_output=True, text=True, check=True)
        hd_times.append(time.perf_counter() - t0)
        hd_out = json.loads(p.stdout)['metrics']
    pc_times, pc_out = [], None
    for _ in range(a.repeat):
        # a fresh interpreter each time, so imports and the jar start-up count
        code = ('import json,sys; sys.path.insert(0, %r); import bench_metrics as b; '
                'rows=[json.loads(l) for l in open(%r)]; t,o=b.pycoco(rows); print(json.dumps([t,o]))'
                % (os.path.dirname(os.path.abspath(__file__)), tmp.name))
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
        pc_times.append(time.perf_counter() - t0)
        pc_out = json.loads(p.stdout.strip().splitlines()[-1])[1]
    os.unlink(tmp.name)
    hd, pc = statistics.median(hd_times), statistics.median(pc_times)
    print(json.dumps({'n': n, 'hdpo_s_median': hd, 'pycocoevalcap_s_median': pc, 'speedup': pc / hd,
                      'hdpo_s': hd_times, 'pycocoevalcap_s': pc_times,
                      'hdpo': hd_out, 'pycocoevalcap': pc_out}, indent=1))
    for k, v in pc_out.items():
        if abs(hd_out[k] - v) > 1e-6:
            print('MISMATCH', k, hd_out[k], v, file=sys.stderr)
            sys.exit(1)


if __name__ == '__main__':
    main()
