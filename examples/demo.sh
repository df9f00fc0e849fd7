#!/usr/bin/env bash
# The main job end to end on an embedded registry (a SQLite file + a blob folder):
# train real adapters with PEFT on synthetic tasks, push them, evaluate them against the base,
# search by a measured metric, show a card, tag, pull, load with PEFT, merge two of them,
# evaluate and compare the merge (with plots), rebuild the merge and check it (within the
# rounding bound), and export a merged model. No metric is typed by hand.
set -euo pipefail
DEMO="${DEMO_DIR:-.demo}"
export HUB_HOME="$DEMO/home"
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
rm -rf "$DEMO"
mkdir -p "$DEMO"

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

python examples/make_adapters.py "$DEMO"
step hub push "$DEMO/adapters/sql-lora" --name demo/sql-lora --task sql --tag team=nlp
step hub push "$DEMO/adapters/code-lora" --name demo/code-lora --task code --tag team=nlp
step hub push "$DEMO/adapters/summarize-dora" --name demo/summarize-dora --task summarization
step hub push "$DEMO/adapters/chat-ia3" --name demo/chat-ia3 --task chat --tag team=nlp
step hub eval demo/sql-lora demo/code-lora demo/chat-ia3 --data "$DEMO/data/sql-dev.jsonl" \
    --base "$DEMO/base"
step hub ls
step hub ls --method lora --rank '<=16' --tag team=nlp --sort metric:target_logprob
step hub ls sql --json --limit 1
step hub show demo/sql-lora
step hub tag demo/sql-lora@v1 prod
step hub pull demo/sql-lora@prod -o "$DEMO/pulled/sql-lora"
step python examples/load_pulled.py "$DEMO/base" "$DEMO/adapters/sql-lora" "$DEMO/pulled/sql-lora"
step hub compose svd demo/sql-lora demo/code-lora --name demo/sql-code --rank 8 --weights 0.6,0.4
step hub show demo/sql-code
step hub eval demo/sql-code demo/code-lora --data "$DEMO/data/code-dev.jsonl" --base "$DEMO/base"
step hub eval demo/sql-code --data "$DEMO/data/sql-dev.jsonl" --base "$DEMO/base"
step hub compare demo/sql-lora demo/code-lora demo/sql-code --plot "$DEMO/plots"
step hub verify --rebuild demo/sql-code
step hub export demo/sql-code --base "$DEMO/base" -o "$DEMO/export/sql-code-merged"
step hub verify
