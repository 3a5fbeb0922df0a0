module github.com/ollama/ollama/airllmrunner

go 1.26
