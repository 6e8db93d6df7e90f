from vidcli.cli.main import main

main()
