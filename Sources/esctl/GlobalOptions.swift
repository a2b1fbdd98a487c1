import ArgumentParser

/// The options every command that opens a store takes. They are declared on the root command
/// (so they may come before the subcommand) and on every subcommand (so they may come after
/// it, and so each subcommand's `--help` lists them).
struct GlobalOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("The store: sqlite:PATH or postgres://… Default: $ESCTL_STORE or sqlite:./eventstore.sqlite.",
                                             valueName: "url"))
    var store: String?

    @Option(name: .long, help: ArgumentHelp("File holding the master key (32 raw bytes or base64). Never the key itself.", valueName: "path"))
    var masterKeyFile: String?

    @Flag(name: .long, help: "Read the master key (base64) from standard input.")
    var masterKeyStdin = false

    @Flag(name: .long, help: "Derive the master key from a passphrase (prompted without echo on a TTY, else one line of stdin).")
    var passphrase = false
}
