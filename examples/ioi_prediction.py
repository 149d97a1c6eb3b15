"""The default model's answer to the IOI prompt, and where its attention looks at the last token."""

from circuits import load_model

PROMPT = "When Mary and John went to the store, John gave a drink to"

model = load_model()
logits, cache = model.record(PROMPT, [("attn_pattern", layer) for layer in range(model.n_layers)])
tokens = [model.tokenizer.decode([t]) for t in model.tokenize(PROMPT)[0]]
print("top next tokens:", model.top_tokens(PROMPT, k=3))
mary = tokens.index(" Mary")
# Heads that move the answer look from the last position to " Mary".
scores = [(cache[("attn_pattern", l)][h, -1, mary].item(), l, h)
          for l in range(model.n_layers) for h in range(model.n_heads)]
for score, layer, head in sorted(scores, reverse=True)[:5]:
    print(f"L{layer}H{head}: attention END -> Mary = {score:.2f}")
