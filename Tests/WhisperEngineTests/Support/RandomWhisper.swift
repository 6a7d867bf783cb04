@_exported import TestSupport

// RandomWhisper comes from the TestSupport target; SeededGenerator from WhisperEngine.
