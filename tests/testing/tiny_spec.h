// The tiny builtin trial that the end-to-end tests run: a one-layer, dim-32 Llama on the
// bundled KJV corpus (batch 4 x seq 32, warmup 5, 2 eval batches), about 100 steps per second
// on one core, in a grid over optim.lr. Each test adds what it is about (a metric, retries,
// early termination, more parameters) through the fields below.
#ifndef SWEEP_TESTS_TESTING_TINY_SPEC_H_
#define SWEEP_TESTS_TESTING_TINY_SPEC_H_

#include <string>

namespace sweep::testing {

struct TinySpec {
  std::string name;
  int steps = 0;              // base.steps; 0 leaves it out (when `steps` is swept, say)
  std::string lrs;            // optim.lr's values, e.g. "1.0e-3, 2.0e-3"
  int checkpoint_every = 20;  // checkpoint.every
  int eval_every = 0;         // eval.every; 0: the trainer's default
  std::string header;         // top-level lines before `base:` (metric, max_attempts, ...)
  std::string base;           // more lines under `base:`, indented by two spaces
  std::string parameters;     // more lines under `parameters:`, indented by two spaces
  std::string tail;           // top-level lines after the parameters (resources, ...)
};

inline std::string TinyBuiltinSpec(const TinySpec& s) {
  std::string eval = "{steps: 2";
  if (s.eval_every > 0) eval += ", every: " + std::to_string(s.eval_every);
  eval += "}";
  return "name: " + s.name + "\nmethod: grid\n" + s.header + "base:\n" +
         (s.steps > 0 ? "  steps: " + std::to_string(s.steps) + "\n" : "") +
         "  model: {dim: 32, n_layers: 1, n_heads: 2, multiple_of: 32}\n"
         "  optim: {warmup: 5}\n"
         "  data: {sources: {kjv: 1.0}, batch_size: 4, seq_len: 32}\n"
         "  eval: " + eval + "\n"
         "  checkpoint: {every: " + std::to_string(s.checkpoint_every) + "}\n" +
         s.base + "parameters:\n  optim.lr: {values: [" + s.lrs + "]}\n" + s.parameters + s.tail;
}

}  // namespace sweep::testing

#endif  // SWEEP_TESTS_TESTING_TINY_SPEC_H_
