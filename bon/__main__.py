from bon.entrypoints.cli import main

# The guard matters: engines such as vllm spawn worker processes that re-import this module.
if __name__ == "__main__":
    main()
