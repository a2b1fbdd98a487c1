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

    @Option(name: .long, help: ArgumentHelp("""
        The master key in a PKCS#11 token (HSM): pkcs11:token=LABEL;object=KEY?module-path=/path/module.so&pin-source=file:/path/pin         (RFC 7512). The PIN comes from pin-source or $ESCTL_PKCS11_PIN, never from the URI.
        """, valueName: "uri"))
    var masterKeyURI: String?

    @Option(name: .long, help: ArgumentHelp("""
        A program that wraps and unwraps data keys over stdin/stdout (SECURITY.md §5.17: Vault transit, a KMS).         A path, run without a shell.
        """, valueName: "path"))
    var masterKeyCommand: String?

    @Option(name: .long, help: ArgumentHelp(
        "A preset compression dictionary the application writes with (a file of its bytes, as given to "
            + "CompressionDictionary); repeat for each. Records compressed with one read only with it.",
        valueName: "path"))
    var compressionDictionary: [String] = []
}
