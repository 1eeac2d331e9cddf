#!/usr/bin/env bash
# The decoding commands end to end: eval on the exact field (every structure
# back), init, latents + t-SNE maps that render, decode, interpolate and
# eval with a (random) model at coarse settings, and their errors on bad input.
set -euo pipefail
nesf=${NESF_BUILD_ROOT:?}/tools/nesf/nesf
shared=${NESF_SHARED:?}
d=$shared/datasets/lcs6
[ -f "$d/val.jsonl" ] || { echo "skipped: no ../shared datasets"; exit 77; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
coarse='{"grid_step": 1.5, "iterations": 4, "repair_lattice": 1}'

# exact field: 40 structures, all reconstructed
"$nesf" eval --truth --meta "$d/meta.json" --bbox-from "$d/train.jsonl" --data "$d/val.jsonl" \
    --limit 40 --threads 1 --json --out "$tmp/recon.jsonl" > "$tmp/truth.json"
jq -e '.all.structures == 40 and .all.atom_count_error_pct == 0 and .wrong == 0
       and .all.species_error_actual_pct == 0 and .all.position_error_actual < 1e-4' \
    "$tmp/truth.json" > /dev/null || fail "truth eval: $(cat "$tmp/truth.json")"
[ "$(wc -l < "$tmp/recon.jsonl")" -eq 40 ] || fail "recon.jsonl lines"
jq -e -s 'map(.species | length) | add > 40' "$tmp/recon.jsonl" > /dev/null || fail "recon atoms"

"$nesf" init --meta "$d/meta.json" --data-bbox "$d/train.jsonl" --out "$tmp/m.safetensors" \
    --seed 3 > "$tmp/init.txt"
grep -q "765465 parameters" "$tmp/init.txt" || fail "init: $(cat "$tmp/init.txt")"

head -n 6 "$d/val.jsonl" > "$tmp/six.jsonl"
"$nesf" latents --model "$tmp/m.safetensors" --data "$tmp/six.jsonl" --threads 1 \
    --out "$tmp/lat.json" --svg "$tmp/map.svg" --color all --perplexity 2 2> "$tmp/lat.log"
jq -e '(.latents | length) == 6 and (.latents[0] | length) == 192 and (.tsne | length) == 6
       and .ids[0] == "mp-866288"' "$tmp/lat.json" > /dev/null || fail "latents json"
for c in volume atoms spacegroup; do
  rsvg-convert -o "$tmp/map-$c.png" "$tmp/map-$c.svg" || fail "render $c"
  [ -s "$tmp/map-$c.png" ] || fail "empty png $c"
done

"$nesf" decode --model "$tmp/m.safetensors" --threads 1 --options "$coarse" "$tmp/lat.json" \
    > "$tmp/dec.json" 2> "$tmp/dec.log"
jq -e 'length == 6 and all(.[]; .lattice.volume > 0)' "$tmp/dec.json" > /dev/null || fail "decode json"
"$nesf" decode --model "$tmp/m.safetensors" --threads 1 --options "$coarse" --format cif \
    --out "$tmp/dec.cif" "$tmp/lat.json" 2> /dev/null
[ "$(grep -c '^data_' "$tmp/dec.cif")" -eq 6 ] || fail "decode cif blocks"

sed -n 1p "$d/val.jsonl" > "$tmp/a.json"
jq -c '.latents[1]' "$tmp/lat.json" > "$tmp/b.json"     # a structure to a latent
"$nesf" interpolate --model "$tmp/m.safetensors" --threads 1 --options "$coarse" --steps 3 \
    --format json "$tmp/a.json" "$tmp/b.json" > "$tmp/path.json" 2> /dev/null
jq -e 'length == 3 and .[0].t == 0 and .[1].t == 0.5 and .[2].t == 1 and (.[0].cif | startswith("#"))' \
    "$tmp/path.json" > /dev/null || fail "interpolate: $(head -c 400 "$tmp/path.json")"

"$nesf" eval --model "$tmp/m.safetensors" --data "$d/val.jsonl" --limit 3 --threads 1 \
    --options "$coarse" --json > "$tmp/eval.json"
jq -e '.all.structures == 3 and .lattice_repaired >= 0 and .timing.particles_per_structure == 9*7*5' \
    "$tmp/eval.json" > /dev/null || fail "eval model: $(cat "$tmp/eval.json")"

# a structure that fails is a record with an error, and the rest is written
# (issue 18: "out of memory" and nothing at all); readers skip such records
(head -n 2 "$d/val.jsonl"; sed -n 3p "$d/val.jsonl" | jq -c '.id = "he-1" | .species = [.species[] | "He"]') \
    > "$tmp/three.jsonl"
"$nesf" eval --model "$tmp/m.safetensors" --data "$tmp/three.jsonl" --threads 1 --options "$coarse" \
    --json --out "$tmp/ev.jsonl" > "$tmp/ev.json"
jq -e '.outside_domain.not_encodable == 1 and .outside_domain.codes.model_lacks_element == 1' "$tmp/ev.json" > /dev/null \
    || fail "eval not encodable: $(cat "$tmp/ev.json")"
[ "$(wc -l < "$tmp/ev.jsonl")" -eq 3 ] || fail "eval --out lines: $(cat "$tmp/ev.jsonl")"
jq -e -s '.[2].id == "he-1" and .[2].index == 2 and (.[2].error | test("He")) and (.[0].lattice | type) == "object"' \
    "$tmp/ev.jsonl" > /dev/null || fail "eval --out error record: $(cat "$tmp/ev.jsonl")"
[ "$("$nesf" convert --from jsonl --to json "$tmp/ev.jsonl" | jq length)" -eq 2 ] || fail "error record read"
jq -c '{latents: [.latents[0], [range(192) | 1e30]]}' "$tmp/lat.json" > "$tmp/huge.json"
set +e
"$nesf" decode --model "$tmp/m.safetensors" --threads 1 --options "$coarse" --format jsonl \
    "$tmp/huge.json" > "$tmp/huge.jsonl" 2> /dev/null; rc=$?
set -e
[ $rc -eq 1 ] && [ "$(wc -l < "$tmp/huge.jsonl")" -eq 2 ] || fail "decode jsonl with a failure: $rc"
jq -e -s '(.[0].lattice | type) == "object" and .[1].index == 1 and (.[1].error | length) > 0' \
    "$tmp/huge.jsonl" > /dev/null || fail "decode error record: $(cat "$tmp/huge.jsonl")"
ls "$tmp" | grep -q '\.tmp\.' && fail "temporary files left: $(ls "$tmp")"
# the training domain (nesf domain) and eval's report of the inputs outside it
"$nesf" domain --model "$tmp/m.safetensors" --data "$tmp/six.jsonl" --sample 2 --threads 1 \
    --options '{"mode": "fast", "grid_step": 1.5, "iterations": 4, "repair_lattice": 1}' \
    --out "$tmp/dom.safetensors" > "$tmp/dom.txt" 2> "$tmp/dom.err" || fail "domain: $(cat "$tmp/dom.err")"
grep -q '"structures":6' "$tmp/dom.txt" && grep -q '"sample":2' "$tmp/dom.txt" || fail "domain: $(cat "$tmp/dom.txt")"
{ head -n 2 "$tmp/six.jsonl"
  head -n 1 "$tmp/six.jsonl" | jq -c '.lattice.matrix |= map(map(. * 3)) | .cart_coords |= map(map(. * 3))
                                      | del(.frac_coords, .lattice.a)'; } > "$tmp/mixed.jsonl"
"$nesf" eval --model "$tmp/dom.safetensors" --data "$tmp/mixed.jsonl" --threads 1 --options "$coarse" \
    --json > "$tmp/eval2.json"
jq -e '.outside_domain.structures == 1 and .outside_domain.codes.cell_length_out_of_range == 1
       and .outside_domain.inside.structures == 2 and .outside_domain.outside.structures == 1
       and (.confidence.thresholds | length) == 5
       and .confidence.right_count.structures + .confidence.wrong_count.structures + .failed == 3' \
    "$tmp/eval2.json" > /dev/null || fail "eval outside domain: $(jq -c .outside_domain "$tmp/eval2.json")"

# bad input: clear errors, no crash
echo '[1, 2, 3]' > "$tmp/short.json"
set +e
"$nesf" decode --model "$tmp/m.safetensors" "$tmp/short.json" 2> "$tmp/err1"; rc1=$?
"$nesf" decode --model "$tmp/m.safetensors" --options '{"iteration": 3}' "$tmp/lat.json" 2> "$tmp/err2"; rc2=$?
echo '{"latents": [[NaN]]}' > "$tmp/nan.json"
"$nesf" decode --model "$tmp/m.safetensors" "$tmp/nan.json" 2> "$tmp/err3"; rc3=$?
"$nesf" interpolate --model "$tmp/m.safetensors" --steps 0 "$tmp/a.json" "$tmp/b.json" 2> /dev/null; rc4=$?
set -e
[ $rc1 -eq 1 ] && grep -q "has 3 values, the model takes 192" "$tmp/err1" || fail "short latent: $rc1 $(cat "$tmp/err1")"
[ $rc2 -eq 2 ] && grep -q 'unknown decode option "iteration"' "$tmp/err2" || fail "bad option: $rc2"
[ $rc3 -eq 1 ] || fail "NaN latent: $rc3"
[ $rc4 -eq 2 ] || fail "steps 0: $rc4"
echo "ok"
