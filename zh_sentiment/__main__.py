from zh_sentiment.cli import main

main()
