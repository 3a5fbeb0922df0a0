"""The fixed English + code text the tiny models' tokenizer is trained on."""

CORPUS = r'''
The quick brown fox jumps over the lazy dog. A small model can still answer questions,
write code and call tools, as long as the tokenizer knows the words it needs.
Hello world! This is a test of the tiny model. How are you today? I am fine, thank you.
The weather is nice and the sun is shining. We went to the park and read a book.
Please write a function that adds two numbers and returns the result.
What is the capital of France? The capital of France is Paris.
Large language models predict the next token from the previous tokens in the context.
When a model does not fit in the memory of the graphics card, its layers are streamed one by one.
The user asked the assistant to list the files in the current directory and read the README.
You are a helpful assistant. Answer briefly and use tools when they help.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 256 1024 2048 4096 16384 65536.

def add(a, b):
    """Return the sum of a and b."""
    return a + b


class Counter:
    def __init__(self, start=0):
        self.value = start

    def increment(self, step=1):
        self.value += step
        return self.value


for i in range(10):
    if i % 2 == 0:
        print(f"even: {i}")
    else:
        print("odd:", i)

import json
data = {"name": "read_file", "arguments": {"path": "README.md", "limit": 100}}
print(json.dumps(data, indent=2))

function greet(name) {
  const message = `Hello, ${name}!`;
  console.log(message);
  return message;
}

#!/usr/bin/env bash
set -euo pipefail
for f in *.txt; do
  echo "file: $f"
done

{"role": "user", "content": "What is the weather in Berlin?"}
{"role": "assistant", "tool_calls": [{"type": "function",
  "function": {"name": "get_weather", "arguments": {"city": "Berlin"}}}]}
{"role": "tool", "content": "{\"temperature\": 21, \"unit\": \"celsius\"}"}
SELECT id, name FROM users WHERE age > 30 ORDER BY name;
<html><body><p>Hello</p></body></html>
'''
