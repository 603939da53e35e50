"""Evaluation: generate on prompt sets, score the outputs, write metrics.json and generations.jsonl.

Data flow: `eval:` (config/eval.py, validated when the run config loads) -> runner.Evaluator reads every
prompt set once, encoded exactly as training encodes prompts -> for each stage, each task
(tasks.py, registered by name) generates in batches (generation.py) and scores with small metric
functions (metrics.py, privacy.py, judges.py) -> flat `metric@role -> float` dicts.

The `eval:` section (every key optional except `tasks`; a source is a data source as in `data:`):

    eval:
      generation: {max_new_tokens: 48, batch_size: 16, do_sample: false, temperature: 1.0, top_p: 1.0, seed: 0}
      judge:                      # for the harmful task
        kind: embedding           # embedding | reward | classifier
        path: null                # reward / classifier: local model folder
        threshold: null           # embedding: probability (0.5); reward: harmful below this score (0.0)
        harmful_labels: []        # classifier: labels that mean harmful
        harmful: null             # source(s) of labelled harmful responses (default: data.forget)
        safe: null                # source(s) of labelled safe responses (default: refusals + data.normal)
        max_examples: 500         # per label
      max_rows: null              # keep the first N rows of every prompt set
      refusal_phrases: null       # replaces the built-in refusal phrases
      tasks:
        - {name: harmful, forget: SOURCE?, unseen: SOURCE?, normal: SOURCE?}
        - {name: leak, forget: SOURCE?, unseen: SOURCE?, score: bleu, threshold: 0.5, max_new_tokens: null}
        - {name: hallucination, forget: ANSWERS, unseen: ANSWERS?}
        - {name: contains, forget: SOURCE?, paraphrase: SOURCE?, unseen: SOURCE?, retain: SOURCE?}
        - {name: utility, normal: SOURCE?, nonsense: {min_unique_share: 0.3, min_words: 8, max_perplexity: 1000}}
        - {name: mia, forget: SOURCE?, holdout: SOURCE, k: 0.2}

    SOURCE:  {path, prompt, response, format, limit, skip, window_tokens, prompt_tokens} (unset forget:
             data.forget; unset utility normal: the first data.normal source)
    ANSWERS: {path, prompt: question, right: right_answer, hallucinated: hallucinated_answer, format, limit, skip}
"""
