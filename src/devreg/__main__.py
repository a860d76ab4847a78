from devreg.entry import main

main()
