class MamlAnomalyError(Exception): """An error the user can fix; the CLI prints it and exits 1."""
class InputError(MamlAnomalyError): """Bad input data or arguments."""
class ModelDirError(MamlAnomalyError): """A model directory that is missing, incompatible or corrupt."""
class ConfigError(MamlAnomalyError): """A bad configuration file or option value."""
