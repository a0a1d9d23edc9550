"""Drive meteor-1.5.jar exactly like pycocoevalcap's Meteor: SCORE lines then one EVAL line.
usage: jarmeteor.py PAIRS.jsonl OUT.json [extra jar args...]   (rows {"h":..., "r":...})"""
import json, subprocess, sys
JAR = '/tmp/mt/whl/pycocoevalcap/meteor/meteor-1.5.jar'
rows = [json.loads(l) for l in open(sys.argv[1])]
cmd = ['java', '-jar', '-Xmx2G', JAR, '-', '-', '-stdio', '-l', 'en', '-norm'] + sys.argv[3:]
p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
eval_line = 'EVAL'
stats = []
for r in rows:
    h = r['h'].replace('|||', '').replace('  ', ' ')
    line = ' ||| '.join(('SCORE', ' ||| '.join([r['r']]), h))
    p.stdin.write((line + '\n').encode()); p.stdin.flush()
    s = p.stdout.readline().decode().strip()
    stats.append(s)
    eval_line += ' ||| ' + s
p.stdin.write((eval_line + '\n').encode()); p.stdin.flush()
seg = [float(p.stdout.readline().strip()) for _ in rows]
agg = float(p.stdout.readline().strip())
p.stdin.close(); p.wait()
json.dump({'aggregate': agg, 'segments': seg, 'stats': stats}, open(sys.argv[2], 'w'))
