from memtrace.cli.app import main

main()
