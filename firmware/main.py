# Entry point on every board: slots.py chooses what runs from which slot, runs it forever and
# rolls back a release that fails (docs/ota.md). Over-the-air updates replace neither file.
import slots

slots.main()
