from bon.cli import main

main()
