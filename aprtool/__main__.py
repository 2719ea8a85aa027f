from aprtool.cli import main

main()
