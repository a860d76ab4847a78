from devreg.cli import main

main()
