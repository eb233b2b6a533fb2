from dmedit.cli.app import main

main()
