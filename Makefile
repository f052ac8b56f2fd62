# Convenience aliases for ./run (the README's two commands are the source of truth).
.PHONY: demo test bench setup
demo:
	./run demo
test:
	./run test
bench:
	./run bench
setup:
	./run setup
