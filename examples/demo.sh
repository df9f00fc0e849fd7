#!/usr/bin/env bash
# The main job end to end on an embedded registry (a SQLite file + a blob folder):
# build real adapters with PEFT, push them, search, show a card, tag, pull, load with PEFT,
# merge two of them, rebuild the merge and check it (within the rounding bound), and export a
# merged model.
set -euo pipefail
DEMO="${DEMO_DIR:-.demo}"
export HUB_HOME="$DEMO/home"
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
rm -rf "$DEMO"
mkdir -p "$DEMO"

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

python examples/make_adapters.py "$DEMO"
step hub push "$DEMO/adapters/sql-lora" --name demo/sql-lora --task sql --tag team=nlp \
    --metric exact_match=0.71@spider
step hub push "$DEMO/adapters/code-lora" --name demo/code-lora --task code --tag team=nlp \
    --metric exact_match=0.64@humaneval
step hub push "$DEMO/adapters/summarize-dora" --name demo/summarize-dora --task summarization \
    --metric rougeL=0.42@cnn_dm
step hub push "$DEMO/adapters/chat-ia3" --name demo/chat-ia3 --task chat --tag team=nlp
step hub ls
step hub ls --method lora --rank '<=16' --tag team=nlp --sort metric:exact_match
step hub ls sql --json --limit 1
step hub show demo/sql-lora
step hub tag demo/sql-lora@v1 prod
step hub pull demo/sql-lora@prod -o "$DEMO/pulled/sql-lora"
step python examples/load_pulled.py "$DEMO/base" "$DEMO/adapters/sql-lora" "$DEMO/pulled/sql-lora"
step hub compose svd demo/sql-lora demo/code-lora --name demo/sql-code --rank 8 --weights 0.6,0.4
step hub show demo/sql-code
step hub verify --rebuild demo/sql-code
step hub export demo/sql-code --base "$DEMO/base" -o "$DEMO/export/sql-code-merged"
step hub verify
