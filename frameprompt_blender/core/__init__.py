"""Pure modules shared by the Blender add-on and the backend: no bpy, no torch, no sockets."""
